"""facemargin serving, torch-free, in three floors:

* `service.vision`: the face core every package uses (decode, detect, align, embed, the
  model contract, typed errors);
* `service.gallery`: enrolled subjects (SQL store of record, FAISS index, snapshots,
  replication) behind one `Gallery`;
* `service.api`: the HTTP service (FastAPI app, routes, the face pipeline, settings).

`service.cli` is the `facemargin` command for all three packages."""
