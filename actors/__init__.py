"""Ray placement only: thin actors around the library (PersonaShard, RecommenderActor, Coordinator)."""
