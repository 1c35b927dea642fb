"""HTTP routers: faces (verify, embed, detect), gallery (enroll, identify, subjects) and
operations (health, ready, metrics, info)."""
