"""What every layer leans on: errors, configs, devices, files, checkpoints."""
