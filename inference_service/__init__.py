"""The chargpt inference service: loaded models, batched streaming generation, scoring and attention."""
