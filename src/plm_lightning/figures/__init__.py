"""Figures: matplotlib on the Agg backend, written atomically (common), and the pictures of one run: recall curve,
retrieval grid, similarity histogram, embedding projection (run_figures). Below the callbacks and the analyses, which
both draw with them; imports no Lightning."""
