"""Analyses built on the method and data layers: the similarity-quality report (and the studies)."""
