"""One FeatureService per model version: what each model reads, by name."""

from author import author_stats
from feast import FeatureService
from post import post_stats
from user import user_graph, user_history, user_stats

retrieval_v1 = FeatureService(
    name="retrieval_v1",
    features=[user_stats, user_history, post_stats],
    description="Two-tower retrieval: user attributes and history; post features for the candidate tower.",
)
ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[user_stats, user_history, author_stats, post_stats],
    description="Ranker: user, history, author and post features for each impression.",
)
serving_graph_v1 = FeatureService(
    name="serving_graph_v1",
    features=[user_graph],
    description="The in-network source and the author filters: followees, blocked and muted authors.",
)
