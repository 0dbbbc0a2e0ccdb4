"""Layer 10: showing datasets: the HTTP server, viewer states and links, nginx/S3/GCS hosting configs."""
