"""Planning: plan-first execution and the router, as pure functions over typed
plans (imports only the contracts, like the core that will drive it)."""
