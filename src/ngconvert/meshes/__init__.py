"""Layer 7: meshes: planning, marching cubes tasks, mesh formats and shards, importing mesh files."""
