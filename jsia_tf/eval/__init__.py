"""Evaluation: ranking metrics (CMC, mAP, mINP) and the SYSU-MM01 / RegDB protocols."""
