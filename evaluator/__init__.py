"""CALRec evaluator: generation, quasi-round-robin BM25 retrieval, metrics.

Command lines:
  python -m evaluator.evaluate --help   the Beam evaluation job
  python -m evaluator.report --help     Table 2 layout and paired t-tests
  python -m evaluator.select_checkpoint --help
                                        the best checkpoint by validation
                                        NDCG@10 (paper section 4)

Modules: `data` (split records, corpus), `generation` (generator interface,
RunInference handler), `model_handler` (the JAX model as a generator),
`baselines` (Last Item Repeater), `lucene` (JVM, analyzer, Lucene BM25),
`bm25` (exact vectorized BM25), `retrieval` (Algorithm 1, hierarchical
match), `metrics` (optimistic/pessimistic ranks), `transforms` (the job's
steps), `config` (an evaluation's settings and the files they name),
`evaluate`, `report`, `select_checkpoint`. Data, outputs and reports, local
or remote, are read and written through `pipelines.files` (Beam's
FileSystems).
"""
