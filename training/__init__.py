"""STML training: data, transforms, model, losses, teacher, sampler, trainer, evaluation."""
