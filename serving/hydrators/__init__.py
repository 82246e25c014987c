"""Hydrators: query hydrators (user features, history, graph) and candidate hydrators (post and author features),
all reading the online store through `features.online.OnlineFeatures` (which fills its defaults)."""
