"""Human feedback, simulated: labelers with known noise and biases that turn the synthetic world's
gold reward into preference data, so a reward model's accuracy can be compared with a ceiling that
is known exactly rather than estimated."""
