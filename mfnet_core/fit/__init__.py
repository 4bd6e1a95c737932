"""The test-time fit: one Levenberg-Marquardt/IRLS solver (`fit.solver`), the loss plan
(`fit.plan`), the landmark, flow and photometric terms and the stages that use them."""
