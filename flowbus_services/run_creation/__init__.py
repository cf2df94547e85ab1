"""Run-creation service: resolve the flow, merge parameters, create the run."""
