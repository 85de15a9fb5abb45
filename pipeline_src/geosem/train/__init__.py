"""Training: the step loop shared by every task, checkpoints with exact resume, and seeding."""
