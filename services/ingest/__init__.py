"""Events from a stream: a durable NATS JetStream consumer that stores each message's
``Event`` through the same domain path as TrackEvents (``nextbest serve --target ingest``,
or inside ``--target all`` when ``NEXTBEST_STREAM_URL`` is set)."""
