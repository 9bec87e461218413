"""Metric functions (AUC, UAUC, LogLoss, HR@K, NDCG@K, finiteness checks): the bottom layer every stage may use."""
