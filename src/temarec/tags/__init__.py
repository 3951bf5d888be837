"""LLM semantic tags (Sec. III-C, III-D): vocabulary by Algorithm 1, item-tag matching, selection, tag vectors.

    run_tags(dataset_dir, cfg)            the stage: DATASET/tags/{vocab.json, scores.parquet, meta.json}
    load_tag_vectors(dataset_dir, ...)    (n_items, |T|) float32 w_v for a selection x representation
    tag_source(dataset_dir)               one line naming the tag source, for every report
"""

from temarec.tags.stage import run_tags
from temarec.tags.vectors import load_scores, load_tag_vectors, read_vocabulary, tag_source

__all__ = ["run_tags", "load_tag_vectors", "load_scores", "read_vocabulary", "tag_source"]
