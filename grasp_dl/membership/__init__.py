"""Which group is the cluster: the threshold, the guards, the verdict and the summary."""
