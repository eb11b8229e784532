"""Noise schedules and samplers of the generative methods: Gaussian diffusion, the DDPM sampler, the flow ODE
sampler, and optimal transport."""
