"""Training jobs: request to plan, the job manager, worker processes, the event hub and checkpoints on disk."""
