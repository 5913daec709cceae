"""The platform's gateway: one OpenAI-compatible base URL in front of every application's replicas.

`python -m llmapp.gateway` runs it (`python app.py` starts one; in production run several behind a
load balancer: they share nothing but Redis). A request's key says which application it reaches and
its ``model`` must name that application; the gateway then sends it to the replica with the fewest
requests in flight, passing the answer through chunk by chunk. It never reads the database: the
routing table and the keys' index come from Redis (llmapp/gateway/table.py, llmapp/gateway/watch.py).
"""
