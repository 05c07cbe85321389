"""The logistics of many trials: sweep specs, Ray Tune trials, model store, results, analysis."""
