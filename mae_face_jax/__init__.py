"""mae-face-jax: MAE-Face pretraining, per-view fine-tuning and attention fusion for FER in JAX."""
