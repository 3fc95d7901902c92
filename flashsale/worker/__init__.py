"""What runs in `flask worker`: the RQ jobs, the payment pool, and the loop that runs them."""
