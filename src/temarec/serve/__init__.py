"""Using a trained run: the Python API (``Recommender``), the HTTP service (``temarec.serve.app``, extra
``serve``) and ONNX export (``temarec.serve.onnx``, extra ``export``)."""

from temarec.serve.recommender import Recommendations, RecommendError, Recommender, UnknownItemsError

__all__ = ["Recommender", "Recommendations", "RecommendError", "UnknownItemsError"]
