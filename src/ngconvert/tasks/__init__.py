"""Layer 6: doing the work: region and shard tasks, executors (serial, threads, processes, Dask), progress."""
