"""The recognition head: prototype tables and the decisions made from their scores (numpy only)."""
