-- Nearest photos to a query vector that a viewer in `region` may see, best first; score = cosine similarity.
-- The filter is photo_is_visible(), as kept on the embedding rows (visible_restricted / visible_unrestricted,
-- db/sql/photo_embedding_visibility/): it runs inside the model's HNSW index scan on the row the scan reads. pgvector's iterative index scan (relaxed order, re-sorted here) keeps a selective filter from
-- returning fewer than k rows while k eligible rows exist; hnsw.max_scan_tuples bounds the work when they don't.
--
-- ef_search, the scan's candidate list (higher: better recall, slower): the caller's `withsense.ef_search`
-- when it is set (SET LOCAL withsense.ef_search = 400, or set_config('withsense.ef_search', '400', true);
-- db/search.py sets it from WITHSENSE_HNSW_EF_SEARCH), else the SET clause's 200; never less than k. The
-- SET clause also keeps the value picked here inside this call: the caller's hnsw.ef_search is as it was
-- once the function returns.
--
-- The model's index kind (embedding_models.vector_index, migration 0011): 'halfvec' as above; 'binary' (its bit
-- index, build_embedding_index()): the `withsense.binary_rerank` nearest by Hamming distance (default 200, at least
-- k; ef_search raised to it) come from the bit index's iterative scan with the same flag inside it, then are
-- ordered by the exact halfvec cosine and the best k kept: the same rows, scores and rule as the halfvec path,
-- with the candidates' recall of SCALING.md section 2.
--
-- Exact distances when few photos are visible (migration 0014). Where the rule leaves few of the model's rows
-- (a restricted region over a catalogue of minors, much of it in review), the graph scan visits about
-- depth x catalogue / visible candidates before it has its depth of visible rows, while exact distances cost one
-- per visible row, found by the flag's own index (ix_photo_embeddings_<flag>: the rows where the flag is true).
-- So below about sqrt(F x depth x catalogue) visible rows the distances are computed exactly (always the true
-- top k), above it the graph is scanned; depth is k (halfvec) or the candidates re-ranked (binary), F = 20 the
-- cost of a graph candidate against an exact row, measured at 1M (BENCHMARKS.md 8c). How many are visible comes
-- from the flag column's statistics (visible_share(): a catalogue lookup, nothing of the table is read).
-- `withsense.exact_below` replaces the threshold, `withsense.exact_scan` = on / off forces a path (as for
-- search_photos_filtered).
CREATE OR REPLACE FUNCTION search_photos(query_embedding vector, k integer DEFAULT 10, region text DEFAULT NULL)
RETURNS TABLE (photo_id uuid, score double precision, title text, photographer text, width integer, height integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 200
SET hnsw.max_scan_tuples = 50000
AS $$
DECLARE
    m record;
    minors_allowed boolean := coalesce(NOT region_is_restricted(region), false);
    requested text := nullif(btrim(current_setting('withsense.ef_search', true)), '');
    requested_rerank text := nullif(btrim(current_setting('withsense.binary_rerank', true)), '');
    candidates integer;
    requested_exact text := nullif(btrim(current_setting('withsense.exact_below', true)), '');
    forced_scan text := nullif(lower(btrim(current_setting('withsense.exact_scan', true))), '');
    flag text := CASE WHEN minors_allowed THEN 'visible_unrestricted' ELSE 'visible_restricted' END;
    graph_candidate_cost constant numeric := 20;  -- a graph candidate against an exact row (see the header)
    catalogue_size numeric;
    qualifying numeric;
    use_exact boolean;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- (The CASE in parentheses: PL/pgSQL would end the IF's condition at the CASE's THEN.)
    IF requested IS NOT NULL
       AND NOT (CASE WHEN requested ~ '^[0-9]{1,4}$' THEN requested::integer BETWEEN 1 AND 1000 ELSE false END) THEN
        RAISE EXCEPTION 'withsense.ef_search must be an integer from 1 to 1000, got "%"', requested
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config(
        'hnsw.ef_search',
        greatest(coalesce(requested::integer, current_setting('hnsw.ef_search')::integer), k)::text,
        true);
    SELECT id, dimension, vector_index, binary_centre INTO m FROM embedding_models WHERE active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no active embedding model: nothing has been indexed yet'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF query_embedding IS NULL OR vector_dims(query_embedding) <> m.dimension THEN
        RAISE EXCEPTION 'query vector has % dimensions; the active model produces %',
            vector_dims(query_embedding), m.dimension USING ERRCODE = 'data_exception';
    END IF;
    -- Literals, not parameters, for the dimension, the model id and the flag: the planner must match the
    -- partial expression index of this model. The scan reads only photo_embeddings: the visibility rule is on
    -- its rows (db/sql/photo_embedding_visibility/: photo_is_visible() for both answers of minors_allowed,
    -- kept by triggers in the writing transaction), so a selective filter costs no lookup into photos per
    -- graph candidate. The k rows found are joined to photos for their columns, and tested by the rule itself
    -- once more there (k lookups, not thousands).
    IF requested_exact IS NOT NULL AND requested_exact !~ '^[0-9]{1,9}$' THEN
        RAISE EXCEPTION 'withsense.exact_below must be a whole number, got "%"', requested_exact
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF forced_scan IS NOT NULL AND forced_scan NOT IN ('on', 'off') THEN
        RAISE EXCEPTION 'withsense.exact_scan must be on or off, got "%"', forced_scan
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF m.vector_index = 'binary' THEN
        IF requested_rerank IS NOT NULL
           AND NOT (CASE WHEN requested_rerank ~ '^[0-9]{1,4}$' THEN requested_rerank::integer BETWEEN 1 AND 1000
                    ELSE false END) THEN
            RAISE EXCEPTION 'withsense.binary_rerank must be an integer from 1 to 1000, got "%"', requested_rerank
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    candidates := CASE WHEN m.vector_index = 'binary' THEN greatest(coalesce(requested_rerank::integer, 200), k) ELSE k END;
    -- Exact distances or the graph (see the header).
    use_exact := CASE forced_scan WHEN 'on' THEN true WHEN 'off' THEN false END;
    IF use_exact IS NULL THEN
        SELECT greatest(reltuples, 0)::numeric INTO catalogue_size FROM pg_class WHERE oid = 'photos'::regclass;
        qualifying := CASE WHEN catalogue_size > 0 THEN visible_share(flag) * catalogue_size END;
        IF qualifying IS NULL THEN  -- no statistics yet: ask the planner (EXPLAIN, ~1 ms)
            qualifying := estimated_rows(format('SELECT 1 FROM photo_embeddings e WHERE e.model_id = %s AND e.%I',
                                                m.id, flag));
        END IF;
        catalogue_size := greatest(catalogue_size, qualifying);
        use_exact := qualifying < coalesce(requested_exact::numeric,
                                           greatest(1000, sqrt(graph_candidate_cost * candidates * catalogue_size)));
    END IF;
    IF use_exact THEN
        -- score DESC is not the graph's order: the planner reads the visible rows from the flag's index (or the
        -- table, when most rows are visible and the scan is forced) and keeps the best k.
        RETURN QUERY EXECUTE format(
            $q$
            SELECT nn.photo_id, nn.score, p.title, p.photographer, p.width, p.height
            FROM (
                SELECT e.photo_id, 1 - (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) AS score
                FROM photo_embeddings e
                WHERE e.model_id = %2$s AND e.%4$I
                ORDER BY 2 DESC, e.photo_id
                LIMIT $2
            ) nn
            JOIN photos p ON p.id = nn.photo_id AND photo_is_visible(p, %3$s)
            ORDER BY nn.score DESC, nn.photo_id
            $q$, m.dimension, m.id, CASE WHEN minors_allowed THEN 'true' ELSE 'false' END, flag)
        USING query_embedding, k;
        RETURN;
    END IF;
    IF m.vector_index = 'binary' THEN
        PERFORM set_config('hnsw.ef_search', greatest(current_setting('hnsw.ef_search')::integer, candidates)::text, true);
        RETURN QUERY EXECUTE format(
            $q$
            SELECT nn.photo_id, nn.score, p.title, p.photographer, p.width, p.height
            FROM (
                SELECT c.photo_id, 1 - (c.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) AS score
                FROM (
                    SELECT e.photo_id, e.embedding
                    FROM photo_embeddings e
                    WHERE e.model_id = %2$s AND e.%4$I
                    ORDER BY %5$s <~> %6$s
                    LIMIT $3
                ) c
                ORDER BY c.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s), c.photo_id
                LIMIT $2
            ) nn
            JOIN photos p ON p.id = nn.photo_id AND photo_is_visible(p, %3$s)
            ORDER BY nn.score DESC, nn.photo_id
            $q$, m.dimension, m.id, CASE WHEN minors_allowed THEN 'true' ELSE 'false' END,
            CASE WHEN minors_allowed THEN 'visible_unrestricted' ELSE 'visible_restricted' END,
            embedding_bits('e.embedding', m.dimension, m.binary_centre),
            embedding_bits('$1', m.dimension, m.binary_centre))
        USING query_embedding, k, candidates;
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        $q$
        SELECT nn.photo_id, nn.score, p.title, p.photographer, p.width, p.height
        FROM (
            SELECT e.photo_id, 1 - (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) AS score
            FROM photo_embeddings e
            WHERE e.model_id = %2$s AND e.%4$I
            ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)
            LIMIT $2
        ) nn
        JOIN photos p ON p.id = nn.photo_id AND photo_is_visible(p, %3$s)
        ORDER BY nn.score DESC
        $q$, m.dimension, m.id, CASE WHEN minors_allowed THEN 'true' ELSE 'false' END,
        CASE WHEN minors_allowed THEN 'visible_unrestricted' ELSE 'visible_restricted' END)
    USING query_embedding, k;
END $$;
REVOKE ALL ON FUNCTION search_photos(vector, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_photos(vector, integer, text) TO withsense_reader;
