"""Post-training compression of Neural ODEs: POD-DEIM model-order reduction against neuron
(channel) pruning and SVD weight truncation (the MOR study). ``puppet.compress.reduce`` builds the
compressed modules; ``puppet.compress.deploy`` makes each (method, level) a deployment of a trained
run, measured by the one measure path like every deployment."""
