"""Examples of bringing your own recommender: a plug-in class (bpr_plugin.py) and an HTTP service
(http_service.py), each with a scenario beside it."""
