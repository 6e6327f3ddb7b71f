"""Operating the adapter: the words for run outcomes, the Prometheus metrics, and the alerts."""
