"""Safe change: agent versions, shadow deployments, the comparator that joins
production and shadow outcomes, canary analysis, counterfactual replay."""
