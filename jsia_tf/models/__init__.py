"""Networks of JSIA-ReID: the re-ID backbone, module G, discriminators, module V, module F."""
