-- Search with filters, keywords and pages: what the API does, for every service that searches in SQL.
--
--   search_photos_filtered(query_embedding, query_text, k, region, filters, options)
--
-- query_embedding  a query vector of the active model (NULL: keyword search alone; /v1/embeddings/text makes one)
-- query_text       the query's words for keyword matching (NULL: semantic search alone)
-- k                results on this page, 1 to 1000
-- region           the viewer's region: the minors law, as everywhere (photo_is_visible())
-- filters          {"photographer": "Anna Petrova" | [...] (any of them), "tag": "baikal" | [...] (all of them),
--                   "camera": ... (any), "orientation": "landscape" | "portrait" | "square" | [...] (any),
--                   "taken_after", "taken_before", "uploaded_after", "uploaded_before": an ISO date or time
--                   (UTC unless it says; after: at or after, before: strictly before),
--                   "min_width", "min_height": pixels as shown}
--                  Names and camera are matched without regard to case; tags are stored in lower case.
-- options          {"mode": "hybrid" (default) | "semantic" | "keyword",
--                   "min_score": cosine floor: every result below it is dropped (absent: the active model's
--                                embedding_models.min_score, which keeps keyword matches; null: none),
--                   "sort": "relevance" (default) | "newest" (capture time, else upload time, newest first,
--                           among the first 1,000 results by relevance),
--                   "offset": results to skip (the `rank` of the last row of the previous page), 0 to 999,
--                   "exclude": [photo ids] never returned, "negative_text": words that no result may match}
--
-- Each row: its `rank` (1-based, across pages), `score` (cosine similarity to query_embedding; NULL without
-- one), `matched` ('semantic', 'keyword' or 'both'), `relevance` (what the order is by: the fused score in
-- hybrid mode, the cosine in semantic mode, ts_rank in keyword mode), and the photo's metadata. Fewer than k
-- rows: no more results (the floor, the filters, or 1,000 deep).
--
-- How it ranks (every step inside this call, every filter inside each candidate query):
--   semantic: nearest neighbours under the filters. When the filters leave few photos (below about
--             sqrt(depth x catalogue size), or `withsense.exact_below`) the distances are computed exactly over
--             them; else pgvector's iterative HNSW scan (relaxed order) runs with the filters inside it, and
--             the exact distances when it comes back short. Either way a 1%-selective filter still returns k
--             rows while k photos qualify. The scan's first 40 finds (however deep the page) are put in exact
--             order, the rest follow in the order found: under a selective filter the scan's order is loose
--             (at 1M photos and 1% its first 10 held 0.90-0.97 of the true top 10; its first 40, re-sorted,
--             0.975-1.0: BENCHMARKS.md 6c), and a fixed head keeps every page a slice of one ranking.
--             Without filters on photos' columns (the visibility rule alone) the rows come from the flag's own
--             index (migration 0014), one cheap row each, so exact distances win up to sqrt(F x depth x
--             catalogue), F = 20 (as in search_photos, BENCHMARKS.md 8c): a restricted region where ~1% of a
--             1M catalogue is visible is ranked exactly. How many are visible then: visible_share() of the
--             flag's statistics (a catalogue lookup instead of EXPLAIN's ~1 ms).
--   keyword:  photos whose words (photo_search_document(): title, tags, description, photographer) match
--             keyword_query(query_text), by ts_rank.
--   hybrid:   reciprocal rank fusion (1/(60 + rank) summed) of the first 100 of each list; after those, the
--             rest of the semantic list in its order, then the rest of the keyword list. The fusion depth is
--             fixed, so page n + 1 continues page n exactly, whatever k: no duplicates, no gaps. Words that
--             match no photo under the filters leave the semantic list alone, in its order (as deep as a
--             semantic search goes, migration 0015: such a search costs what a semantic one does).
--   the floor is applied to that ranking (not to the semantic list, which fusion needs whole).
-- The HNSW scan's ef_search is the caller's `withsense.ef_search` (as for search_photos), else 200; it
-- does not depend on k or the page, so the candidates' order does not either.
-- The model's index kind (embedding_models.vector_index, migration 0011): with 'binary', the HNSW scan above is
-- the bit index's (Hamming distance, the same filters inside it), and its candidates are re-ranked by the exact
-- halfvec cosine in blocks: the first `withsense.binary_rerank` (default 200; 200 more in hybrid mode, whose
-- semantic list runs that much deeper) in one block, then blocks of binary_rerank, each block in cosine order.
-- Blocks fixed by position keep pages exact: the first n of a deeper list are the first n of a shallower one.
-- The exact path is the same for both kinds; with 'binary' it is taken below sqrt(re-ranking depth x catalogue)
-- photos left by the filters instead of sqrt(depth x catalogue) (the bit index's scan needs that many candidates).
CREATE OR REPLACE FUNCTION search_photos_filtered(
    query_embedding vector,
    query_text text DEFAULT NULL,
    k integer DEFAULT 10,
    region text DEFAULT NULL,
    filters jsonb DEFAULT '{}',
    options jsonb DEFAULT '{}')
RETURNS TABLE (
    photo_id uuid, rank integer, score double precision, matched text, relevance double precision,
    title text, description text, photographer text, tags text[], taken_at timestamptz, uploaded_at timestamptz,
    camera text, lens text, width integer, height integer, orientation text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
SET TimeZone = 'UTC'
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 200
SET hnsw.max_scan_tuples = 1000000
AS $$
DECLARE
    fusion_depth constant integer := 100;
    deepest constant integer := 1000;
    rerank_depth constant integer := 40;  -- the scan's finds put in exact order (see the header)
    graph_candidate_cost constant numeric := 20;  -- a graph candidate against a row of a flag's index (header)
    m record;
    minors_allowed boolean := coalesce(NOT region_is_restricted(region), false);
    -- A literal in each query, so the planner folds the rule's `minors_allowed OR ...` away.
    minors text := CASE WHEN minors_allowed THEN 'true' ELSE 'false' END;
    requested_ef text := nullif(btrim(current_setting('withsense.ef_search', true)), '');
    requested_exact text := nullif(btrim(current_setting('withsense.exact_below', true)), '');
    forced_scan text := nullif(lower(btrim(current_setting('withsense.exact_scan', true))), '');
    catalogue_size numeric;
    qualifying numeric;
    threshold numeric;
    search_mode text;
    sort_order text;
    page_offset integer := 0;
    floor_score double precision;
    strict_floor boolean := false;  -- the caller's min_score: every result, keyword matches too
    wanted integer;
    cond text := '';  -- the filters, on the photos row `p`
    e_cond text := '';  -- `exclude`, on the embedding row `e`
    p_cond text := '';  -- `exclude`, on `p`
    flag text;  -- the visibility rule as kept on the embedding rows, for this region
    joined text;  -- the filters on photos, for the rows the flag lets through
    has_filters boolean := false;
    words tsquery;
    unwanted tsquery;
    excluded uuid[] := '{}';
    name text;
    item jsonb;
    moment timestamptz;
    number numeric;
    values_ text[];
    use_semantic boolean;
    use_keyword boolean;
    s_depth integer;
    k_depth integer;
    s_ids uuid[] := '{}';
    s_scores double precision[] := '{}';
    k_ids uuid[] := '{}';
    k_ranks double precision[] := '{}';
    s_exhausted boolean := true;
    semantic_sql text;
    use_exact boolean;
    scan_depth integer;
    saved_seqscan text;
    saved_sort text;
    -- The binary index (migration 0011).
    requested_rerank text := nullif(btrim(current_setting('withsense.binary_rerank', true)), '');
    rerank integer;
    first_block integer;
    candidates integer;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    filters := coalesce(filters, '{}');
    options := coalesce(options, '{}');
    IF jsonb_typeof(filters) <> 'object' OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'filters and options must be JSON objects' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Options.
    FOR name IN SELECT jsonb_object_keys(options) LOOP
        IF name NOT IN ('mode', 'sort', 'min_score', 'offset', 'exclude', 'negative_text') THEN
            RAISE EXCEPTION 'unknown option "%"; the options are mode, sort, min_score, offset, exclude, negative_text',
                name USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    search_mode := coalesce(options->>'mode', 'hybrid');
    IF search_mode NOT IN ('hybrid', 'semantic', 'keyword') THEN
        RAISE EXCEPTION 'mode must be hybrid, semantic or keyword, got "%"', search_mode
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    sort_order := coalesce(options->>'sort', 'relevance');
    IF sort_order NOT IN ('relevance', 'newest') THEN
        RAISE EXCEPTION 'sort must be relevance or newest, got "%"', sort_order USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF options ? 'offset' THEN
        IF jsonb_typeof(options->'offset') <> 'number' OR (options->>'offset')::numeric NOT BETWEEN 0 AND deepest - 1
           OR (options->>'offset')::numeric <> trunc((options->>'offset')::numeric) THEN
            RAISE EXCEPTION 'offset must be an integer from 0 to %, got %', deepest - 1, options->'offset'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        page_offset := (options->>'offset')::integer;
    END IF;
    IF options ? 'exclude' THEN
        IF jsonb_typeof(options->'exclude') <> 'array'
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(options->'exclude') e
                      WHERE jsonb_typeof(e) <> 'string'
                         OR e #>> '{}' !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$') THEN
            RAISE EXCEPTION 'exclude must be an array of photo ids' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT coalesce(array_agg(e::uuid), '{}') INTO excluded FROM jsonb_array_elements_text(options->'exclude') e;
    END IF;
    IF options ? 'negative_text' AND jsonb_typeof(options->'negative_text') NOT IN ('string', 'null') THEN
        RAISE EXCEPTION 'negative_text must be a string' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    unwanted := keyword_query(options->>'negative_text');

    SELECT id, dimension, embedding_models.min_score, vector_index, binary_centre INTO m
    FROM embedding_models WHERE active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no active embedding model: nothing has been indexed yet'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF query_embedding IS NOT NULL AND vector_dims(query_embedding) <> m.dimension THEN
        RAISE EXCEPTION 'query vector has % dimensions; the active model produces %',
            vector_dims(query_embedding), m.dimension USING ERRCODE = 'data_exception';
    END IF;
    IF options ? 'min_score' THEN
        IF jsonb_typeof(options->'min_score') = 'null' THEN
            floor_score := NULL;
        ELSIF jsonb_typeof(options->'min_score') <> 'number' OR (options->>'min_score')::numeric NOT BETWEEN -1 AND 1 THEN
            RAISE EXCEPTION 'min_score must be a number from -1 to 1 (or null: no floor), got %', options->'min_score'
                USING ERRCODE = 'invalid_parameter_value';
        ELSE
            floor_score := (options->>'min_score')::double precision;
            strict_floor := query_embedding IS NOT NULL;
        END IF;
    ELSE
        floor_score := m.min_score;
    END IF;

    -- Filters, as conditions on the photos row `p` (values quoted as literals by format's %L).
    FOR name, item IN SELECT key, value FROM jsonb_each(filters) LOOP
        IF name IN ('photographer', 'camera') THEN
            values_ := search_filter_values(name, item);
            cond := cond || format(' AND lower(p.%I) = ANY (%L::text[])', name,
                                   (SELECT array_agg(lower(v)) FROM unnest(values_) v));
        ELSIF name = 'tag' THEN
            values_ := search_filter_values(name, item);
            cond := cond || format(' AND p.tags @> %L::text[]',
                                   (SELECT array_agg(lower(regexp_replace(v, '\s+', ' ', 'g'))) FROM unnest(values_) v));
        ELSIF name = 'orientation' THEN
            values_ := search_filter_values(name, item);
            IF EXISTS (SELECT 1 FROM unnest(values_) v WHERE v NOT IN ('landscape', 'portrait', 'square')) THEN
                RAISE EXCEPTION 'orientation must be landscape, portrait or square, got %', item
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            cond := cond || format(' AND p.orientation = ANY (%L::text[])', values_);
        ELSIF name IN ('taken_after', 'taken_before', 'uploaded_after', 'uploaded_before') THEN
            IF jsonb_typeof(item) <> 'string' THEN
                RAISE EXCEPTION 'filter "%" takes an ISO date or time as a string, got %', name, item
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            BEGIN
                moment := (item #>> '{}')::timestamptz;
            EXCEPTION WHEN others THEN
                RAISE EXCEPTION 'filter "%" is not an ISO date or time: %', name, item
                    USING ERRCODE = 'invalid_parameter_value';
            END;
            IF NOT isfinite(moment) THEN
                RAISE EXCEPTION 'filter "%" must be a finite date, got %', name, item USING ERRCODE = 'invalid_parameter_value';
            END IF;
            cond := cond || format(' AND p.%I %s %L::timestamptz',
                                   CASE WHEN name LIKE 'taken%' THEN 'taken_at' ELSE 'created_at' END,
                                   CASE WHEN name LIKE '%after' THEN '>=' ELSE '<' END, moment);
        ELSIF name IN ('min_width', 'min_height') THEN
            IF jsonb_typeof(item) <> 'number' THEN
                RAISE EXCEPTION 'filter "%" takes a whole number of pixels, got %', name, item
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            number := (item #>> '{}')::numeric;
            IF number <> trunc(number) OR number NOT BETWEEN 0 AND 2147483647 THEN
                RAISE EXCEPTION 'filter "%" takes a whole number of pixels from 0, got %', name, item
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            cond := cond || format(' AND p.%I >= %s', CASE WHEN name = 'min_width' THEN 'width' ELSE 'height' END,
                                   number::integer);
        ELSE
            RAISE EXCEPTION 'unknown filter "%"; the filters are photographer, tag, camera, orientation, taken_after, '
                'taken_before, uploaded_after, uploaded_before, min_width, min_height', name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        has_filters := true;
    END LOOP;
    IF unwanted IS NOT NULL THEN
        cond := cond || format(' AND NOT (p.search_document @@ %L::tsquery)', unwanted);
        has_filters := true;
    END IF;
    -- The photos never returned: on the embedding row in the semantic scan (no lookup into photos for it).
    IF cardinality(excluded) > 0 THEN
        e_cond := format(' AND NOT (e.photo_id = ANY (%L::uuid[]))', excluded);
        p_cond := format(' AND NOT (p.id = ANY (%L::uuid[]))', excluded);
    END IF;

    words := keyword_query(query_text);
    use_semantic := search_mode IN ('hybrid', 'semantic') AND query_embedding IS NOT NULL;
    use_keyword := search_mode IN ('hybrid', 'keyword') AND query_text IS NOT NULL;
    IF search_mode = 'semantic' AND query_embedding IS NULL THEN
        RAISE EXCEPTION 'semantic search needs a query vector' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF search_mode = 'keyword' AND query_text IS NULL THEN
        RAISE EXCEPTION 'keyword search needs a query text' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT use_semantic AND NOT use_keyword THEN
        RAISE EXCEPTION 'give a query vector, a query text, or both' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    wanted := CASE WHEN sort_order = 'newest' THEN deepest ELSE least(page_offset + k, deepest) END;
    s_depth := CASE WHEN search_mode = 'hybrid' AND use_keyword THEN 2 * fusion_depth + wanted ELSE wanted END;
    k_depth := CASE WHEN search_mode = 'hybrid' AND use_semantic THEN 2 * fusion_depth + wanted ELSE wanted END;

    -- The keyword list first: when the words match no photo that the filters let through, there is nothing to
    -- fuse, the hybrid ranking is the semantic list's own order, and it needs that list no deeper than a
    -- semantic search does (not 200 deeper, each of those rows then tested against the words).
    IF use_keyword AND words IS NOT NULL THEN
        EXECUTE format(
            $q$
            SELECT coalesce(array_agg(kw.id), '{}'), coalesce(array_agg(kw.r), '{}')
            FROM (
                SELECT p.id, ts_rank(p.search_document, $1, 1)::double precision AS r
                FROM photos p
                WHERE p.search_document @@ $1 AND photo_is_visible(p, %1$s)%2$s%3$s
                ORDER BY r DESC, p.id
                LIMIT $2
            ) kw
            $q$, minors, cond, p_cond)
        INTO k_ids, k_ranks USING words, k_depth;
    END IF;
    IF search_mode = 'hybrid' AND cardinality(k_ids) = 0 THEN
        s_depth := wanted;
    END IF;

    IF use_semantic THEN
        IF requested_ef IS NOT NULL
           AND NOT (CASE WHEN requested_ef ~ '^[0-9]{1,4}$' THEN requested_ef::integer BETWEEN 1 AND 1000 ELSE false END) THEN
            RAISE EXCEPTION 'withsense.ef_search must be an integer from 1 to 1000, got "%"', requested_ef
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF requested_ef IS NOT NULL THEN
            PERFORM set_config('hnsw.ef_search', requested_ef, true);
        END IF;
        IF requested_exact IS NOT NULL AND requested_exact !~ '^[0-9]{1,9}$' THEN
            RAISE EXCEPTION 'withsense.exact_below must be a whole number, got "%"', requested_exact
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF forced_scan IS NOT NULL AND forced_scan NOT IN ('on', 'off') THEN
            RAISE EXCEPTION 'withsense.exact_scan must be on or off, got "%"', forced_scan
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- Exact distances or the HNSW scan. Exact costs one distance per photo that qualifies; the scan visits
        -- about depth x catalogue / qualifying photos before it has `depth` of them, and it always goes at least
        -- rerank_depth deep. So exact wins below about sqrt(depth x catalogue) qualifying photos
        -- (bench/search_filters.py measures both): 2,000 for a semantic page of 100,000 photos, ~6,300 at 1M,
        -- ~15,000 at 1M for hybrid, whose semantic list runs 200 deeper. How many qualify is the planner's
        -- estimate (no rows are read for it); the depth is the first page's, and a small catalogue (fewer photos than the deepest a search goes) is always
        -- ranked exactly: the decision never depends on the page, so neither does the ranking.
        -- `withsense.exact_below` replaces the threshold; `withsense.exact_scan` = on / off forces a path.
        SELECT greatest(reltuples, 0)::numeric INTO catalogue_size FROM pg_class WHERE oid = 'photos'::regclass;
        flag := CASE WHEN minors_allowed THEN 'visible_unrestricted' ELSE 'visible_restricted' END;
        IF cond = '' THEN  -- the rule alone: the statistics of the one flag column estimate it best
            qualifying := CASE WHEN catalogue_size > 0 THEN visible_share(flag) * catalogue_size END;
            IF qualifying IS NULL THEN  -- no statistics yet: ask the planner
                qualifying := estimated_rows(format('SELECT 1 FROM photo_embeddings e WHERE e.model_id = %s AND e.%I',
                                                    m.id, flag));
            END IF;
        ELSE
            qualifying := estimated_rows(format('SELECT 1 FROM photos p WHERE photo_is_visible(p, %s)%s', minors, cond));
        END IF;
        catalogue_size := greatest(catalogue_size, qualifying);
        threshold := coalesce(
            requested_exact::numeric,
            greatest(1000, sqrt(CASE WHEN cond = '' THEN graph_candidate_cost ELSE 1 END
                                * (CASE WHEN s_depth > wanted THEN 2 * fusion_depth + 10 ELSE rerank_depth END)
                                * catalogue_size)));
        -- ---- The binary index (migration 0011): its scan must bring `rerank` qualifying candidates, not 10, so it
        -- visits about rerank x catalogue / qualifying photos: exact distances win below sqrt(rerank x catalogue)
        -- (bench/binary_index.py: at a 1% filter the bit index's scan is 6-10x slower than the halfvec one). ----
        IF m.vector_index = 'binary' THEN
            IF requested_rerank IS NOT NULL
               AND NOT (CASE WHEN requested_rerank ~ '^[0-9]{1,4}$'
                             THEN requested_rerank::integer BETWEEN 1 AND 1000 ELSE false END) THEN
                RAISE EXCEPTION 'withsense.binary_rerank must be an integer from 1 to 1000, got "%"', requested_rerank
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            rerank := coalesce(requested_rerank::integer, 200);
            IF requested_exact IS NULL THEN
                threshold := greatest(threshold, sqrt(CASE WHEN cond = '' THEN graph_candidate_cost ELSE 1 END
                                                      * (rerank + s_depth - wanted) * catalogue_size));
            END IF;
        END IF;
        -- ---- end of the binary index ----
        use_exact := CASE forced_scan WHEN 'on' THEN true WHEN 'off' THEN false
                     ELSE qualifying < threshold OR catalogue_size < 2 * (fusion_depth + deepest) END;
        -- %5$s: the order; format() is applied once to each variant, so no value quoted into `cond` is read
        -- as a format specifier.
        -- The visibility rule is tested on the embedding row the scan reads (its flag, kept by triggers in the
        -- writing transaction: db/sql/photo_embedding_visibility/), before any lookup into photos; photos is
        -- joined only when a filter is on its columns, and then only for the rows the flag lets through, where
        -- the rule itself is tested once more at no extra cost.
        semantic_sql := $q$
            SELECT coalesce(array_agg(nn.photo_id), '{}'), coalesce(array_agg(nn.score), '{}')
            FROM (
                SELECT e.photo_id, 1 - (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) AS score
                FROM photo_embeddings e%8$s
                WHERE e.model_id = %2$s AND e.%6$I%7$s%4$s
                ORDER BY %5$s
                LIMIT $2
            ) nn
            $q$;
        joined := CASE WHEN cond = '' THEN ''
                  ELSE format(' JOIN photos p ON p.id = e.photo_id AND photo_is_visible(p, %s)', minors) END;
        IF NOT use_exact THEN
            -- The HNSW scan whatever the planner would estimate for this page's depth: a plan that changed with
            -- the depth would rank the same photos differently on two pages.
            saved_seqscan := current_setting('enable_seqscan');
            saved_sort := current_setting('enable_sort');
            PERFORM set_config('enable_seqscan', 'off', true);
            PERFORM set_config('enable_sort', 'off', true);
            IF m.vector_index IS DISTINCT FROM 'binary' THEN
                -- At least rerank_depth deep whatever the page: the head re-sorted below is the same on every page.
                scan_depth := greatest(s_depth, rerank_depth);
                EXECUTE format(semantic_sql, m.dimension, m.id, minors, cond,
                               format('e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)', m.dimension),
                               flag, e_cond, joined)
                    INTO s_ids, s_scores USING query_embedding, scan_depth;
            ELSE
                scan_depth := s_depth;  -- the bit index's candidates are re-ranked in blocks of their own
                -- ---- The binary index (migration 0011): candidates by Hamming distance, re-ranked in blocks. ----
                first_block := rerank + (s_depth - wanted);  -- depends on the mode, not on the page
                candidates := CASE WHEN s_depth <= first_block THEN first_block
                                   ELSE first_block + ((s_depth - first_block + rerank - 1) / rerank) * rerank END;
                PERFORM set_config('hnsw.ef_search',
                                   least(1000, greatest(current_setting('hnsw.ef_search')::integer, first_block))::text,
                                   true);
                EXECUTE format(
                    $q$
                    SELECT coalesce(array_agg(r.photo_id ORDER BY r.block, r.d, r.photo_id), '{}'),
                           coalesce(array_agg(1 - r.d ORDER BY r.block, r.d, r.photo_id), '{}')
                    FROM (
                        SELECT c.photo_id, c.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS d,
                               CASE WHEN c.pos <= $4 THEN 0 ELSE 1 + (c.pos - $4 - 1) / $5 END AS block
                        FROM (
                            SELECT h.photo_id, h.embedding, row_number() OVER () AS pos
                            FROM (
                                SELECT e.photo_id, e.embedding
                                FROM photo_embeddings e%6$s
                                WHERE e.model_id = %2$s AND e.%3$I%4$s%5$s
                                ORDER BY %7$s <~> %8$s
                                LIMIT $3
                            ) h
                        ) c
                        ORDER BY 3, 2, 1
                        LIMIT $2
                    ) r
                    $q$, m.dimension, m.id, flag, e_cond, cond, joined,
                    embedding_bits('e.embedding', m.dimension, m.binary_centre),
                    embedding_bits('$1', m.dimension, m.binary_centre))
                    INTO s_ids, s_scores USING query_embedding, s_depth, candidates, first_block, rerank;
                -- ---- end of the binary index ----
            END IF;
            PERFORM set_config('enable_seqscan', saved_seqscan, true);
            PERFORM set_config('enable_sort', saved_sort, true);
            -- Short: fewer photos qualify than the estimate said (or the scan hit its limits). The exact
            -- distances then, over what is few enough to be cheap: never fewer than k results while k qualify.
            use_exact := cardinality(s_ids) < scan_depth AND forced_scan IS DISTINCT FROM 'off';
            IF NOT use_exact AND m.vector_index IS DISTINCT FROM 'binary' THEN
                -- The first rerank_depth finds in exact order (score, then id, as the exact path ranks), the
                -- rest in the order found; then the list is cut to this search's depth.
                SELECT coalesce(array_agg(r.i ORDER BY r.o), '{}'), coalesce(array_agg(r.sc ORDER BY r.o), '{}')
                INTO s_ids, s_scores
                FROM (
                    SELECT t.i, t.sc,
                           row_number() OVER (ORDER BY t.n > rerank_depth,
                                                       CASE WHEN t.n <= rerank_depth THEN -t.sc END,
                                                       CASE WHEN t.n <= rerank_depth THEN t.i END, t.n) AS o
                    FROM unnest(s_ids, s_scores) WITH ORDINALITY AS t(i, sc, n)
                ) r
                WHERE r.o <= s_depth;
            END IF;
        END IF;
        IF use_exact THEN
            -- score DESC is not the index's order: an exact scan over the qualifying photos.
            EXECUTE format(semantic_sql, m.dimension, m.id, minors, cond,
                           format('1 - (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) DESC, e.photo_id',
                                  m.dimension),
                           flag, e_cond, joined)
                INTO s_ids, s_scores USING query_embedding, s_depth;
        END IF;
        s_exhausted := cardinality(s_ids) < s_depth;
        -- The floor is applied to the fused ranking, not to this list: cut here, photos that match the words
        -- but not the picture would lose their semantic rank, and fusion would rank worse. Once the list's
        -- scores fall below the floor, nothing after it passes: the keyword list's rest may follow.
        IF floor_score IS NOT NULL AND EXISTS (SELECT 1 FROM unnest(s_scores) sc WHERE sc < floor_score) THEN
            s_exhausted := true;
        END IF;
    END IF;

    RETURN QUERY EXECUTE format(
        $q$
        WITH s AS (
            SELECT t.i AS id, t.sc, t.n::integer AS sr
            FROM unnest($1::uuid[], $2::double precision[]) WITH ORDINALITY AS t(i, sc, n)
        ), kw AS (
            SELECT t.i AS id, t.kv, t.n::integer AS kr
            FROM unnest($3::uuid[], $4::double precision[]) WITH ORDINALITY AS t(i, kv, n)
        ), head AS (
            SELECT coalesce(s.id, kw.id) AS id,
                   (coalesce(1.0 / (60 + s.sr), 0) + coalesce(1.0 / (60 + kw.kr), 0))::double precision AS fused
            FROM (SELECT * FROM s WHERE sr <= $5) s FULL JOIN (SELECT * FROM kw WHERE kr <= $5) kw ON kw.id = s.id
            WHERE $6 = 'hybrid'
        ), ranked AS (
            SELECT head.id, 0 AS part, head.fused AS relevance, 0 AS list_rank FROM head
            UNION ALL
            SELECT s.id, 1, CASE WHEN $6 = 'hybrid' THEN 1.0 / (60 + s.sr) ELSE s.sc END, s.sr
            FROM s WHERE $6 = 'semantic' OR ($6 = 'hybrid' AND NOT EXISTS (SELECT 1 FROM head WHERE head.id = s.id))
            UNION ALL
            SELECT kw.id, 2, CASE WHEN $6 = 'hybrid' THEN 1.0 / (60 + kw.kr) ELSE kw.kv END, kw.kr
            FROM kw WHERE $6 = 'keyword'
               OR ($6 = 'hybrid' AND $7 AND NOT EXISTS (SELECT 1 FROM head WHERE head.id = kw.id)
                   AND NOT EXISTS (SELECT 1 FROM s WHERE s.id = kw.id))
        ), scored AS (
            SELECT r.*,
                   CASE WHEN $10::vector IS NULL THEN NULL::double precision
                        ELSE 1 - (e.embedding::halfvec(%1$s) <=> $10::halfvec(%1$s)) END AS cosine,
                   $6 <> 'semantic' AND $12::tsquery IS NOT NULL AND p.search_document @@ $12::tsquery AS keyword_hit
            FROM ranked r
            JOIN photos p ON p.id = r.id AND photo_is_visible(p, %3$s)  -- the rule itself, on the rows shown
            LEFT JOIN photo_embeddings e ON e.photo_id = r.id AND e.model_id = %2$s
        ), numbered AS (
            -- The floor: a result below it is dropped, unless its words match and the floor is the model's
            -- default (a caller's min_score holds for every result).
            SELECT r.id, r.part, r.relevance, r.cosine, r.keyword_hit,
                   row_number() OVER (ORDER BY r.part, CASE WHEN r.part = 0 THEN -r.relevance END, r.list_rank, r.id)
                       AS position
            FROM scored r
            WHERE $16::double precision IS NULL OR r.cosine IS NULL OR r.cosine >= $16
               OR (NOT $15 AND r.keyword_hit)
        ), page AS (
            SELECT n.id, n.part, n.relevance, n.cosine, n.keyword_hit,
                   CASE WHEN $8 = 'newest'
                        THEN row_number() OVER (ORDER BY coalesce(p.taken_at, p.created_at) DESC, p.id DESC)
                        ELSE n.position END AS position
            FROM numbered n JOIN photos p ON p.id = n.id
            WHERE n.position <= $9
        )
        SELECT pg.id, pg.position::integer, pg.cosine,
               CASE WHEN how.semantic_hit AND how.keyword_hit THEN 'both'
                    WHEN how.semantic_hit THEN 'semantic' ELSE 'keyword' END,
               pg.relevance,
               p.title, p.description, p.photographer, p.tags, p.taken_at, p.created_at, p.camera, p.lens,
               p.width, p.height, p.orientation
        FROM page pg
        JOIN photos p ON p.id = pg.id
        -- A semantic match: above the floor when there is one; else in the semantic list near enough to the top
        -- to count: its first 2 x 100 entries, or what the semantic list alone put here.
        CROSS JOIN LATERAL (
            SELECT $6 <> 'keyword' AND pg.cosine IS NOT NULL
                   AND CASE WHEN $16::double precision IS NOT NULL THEN pg.cosine >= $16
                            ELSE pg.part = 1 OR EXISTS (SELECT 1 FROM s WHERE s.id = pg.id AND s.sr <= 2 * $5) END
                       AS semantic_hit,
                   pg.keyword_hit
        ) how
        WHERE pg.position > $13 AND pg.position <= $13 + $14
        ORDER BY pg.position
        $q$, m.dimension, m.id, minors)
    USING s_ids, s_scores, k_ids, k_ranks, fusion_depth, search_mode, s_exhausted, sort_order, wanted,
          query_embedding, floor_score IS NOT NULL, CASE WHEN cardinality(k_ids) > 0 THEN words END, page_offset, k,
          strict_floor, floor_score;
END $$;
REVOKE ALL ON FUNCTION search_photos_filtered(vector, text, integer, text, jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_photos_filtered(vector, text, integer, text, jsonb, jsonb) TO withsense_reader;
