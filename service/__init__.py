"""Number-masking service: masked sessions between customers and agents, click-to-call and reports."""
