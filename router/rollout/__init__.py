"""Progressive canary: the gates' statistics and the controller that moves the canary through its steps."""
