"""The training engine: the loop, its contract with the defenses (`hooks`), checkpoints and termination,
models, recipes, augmentation, the model cache and the CPU kernels."""
