"""Networks of JSIA-ReID: backbone (E^sl, E^il), module G, discriminators and module V."""
