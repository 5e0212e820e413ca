"""The paper's training pipeline: synthetic data, stage 0 (CosFace), stage 1 PDSNs, dictionary, stage 2."""
