-- The share of photo_embeddings rows where `flag` (visible_restricted or visible_unrestricted) is true, read from
-- the planner's statistics (pg_stats as of the last ANALYZE, which autovacuum keeps current): what
-- search_photos and search_photos_filtered ask to choose between exact distances and the HNSW scan when the
-- visibility rule is the only filter. A catalogue lookup, where estimated_rows() (EXPLAIN) plans a query: ~1 ms
-- on a search of 4-8 ms (BENCHMARKS.md 8c). The parent's statistics of a partitioned table when it has them
-- (ANALYZE photo_embeddings; autovacuum analyses only the partitions), else the partitions' mean weighted by
-- their rows. NULL without statistics: the caller asks the planner then.
CREATE OR REPLACE FUNCTION visible_share(flag text) RETURNS numeric
LANGUAGE sql STABLE
SET search_path = public, pg_temp
AS $$
    WITH stats AS (
        SELECT s.inherited, c.reltuples,
               coalesce((SELECT t.f FROM unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS t(v, f)
                         WHERE t.v = 't'),
                        -- 'true' not among the common values: what the listed ones and NULLs leave
                        greatest(0, 1 - s.null_frac - coalesce((SELECT sum(f) FROM unnest(s.most_common_freqs) f), 0))
               )::numeric AS share
        FROM pg_stats s
        JOIN pg_class c ON c.relname = s.tablename AND c.relnamespace = 'public'::regnamespace
        WHERE s.schemaname = 'public' AND s.attname = flag
          AND (s.tablename = 'photo_embeddings'
               OR s.tablename IN (SELECT i.inhrelid::regclass::text FROM pg_inherits i
                                  WHERE i.inhparent = 'photo_embeddings'::regclass))
    )
    SELECT coalesce(
        (SELECT share FROM stats WHERE inherited LIMIT 1),
        (SELECT share FROM stats WHERE NOT inherited AND reltuples > 0 AND NOT EXISTS (
             SELECT 1 FROM pg_inherits i WHERE i.inhparent = 'photo_embeddings'::regclass) LIMIT 1),
        (SELECT sum(share * reltuples) / nullif(sum(reltuples), 0) FROM stats WHERE NOT inherited AND reltuples > 0))
$$;
REVOKE ALL ON FUNCTION visible_share(text) FROM PUBLIC;
