-- Nearest photos to a query vector under every filter, best first.
-- As revision 0003 left it: that revision carries this text inline (it predates db/sql/); the text
-- here is pg_get_functiondef() of a database migrated to it, so re-applying it changes nothing.
CREATE OR REPLACE FUNCTION public.search_photos(query_embedding vector, k integer DEFAULT 10, region text DEFAULT NULL::text)
 RETURNS TABLE(photo_id uuid, score double precision, title text, photographer text, width integer, height integer)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'public', 'pg_temp'
 SET "hnsw.iterative_scan" TO 'relaxed_order'
 SET "hnsw.ef_search" TO '200'
 SET "hnsw.max_scan_tuples" TO '50000'
AS $function$
        DECLARE
            m record;
            minors_allowed boolean := NOT region_is_restricted(region);
        BEGIN
            IF k IS NULL OR k < 1 OR k > 1000 THEN
                RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
            END IF;
            SELECT id, dimension INTO m FROM embedding_models WHERE active;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'no active embedding model: nothing has been indexed yet'
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            IF query_embedding IS NULL OR vector_dims(query_embedding) <> m.dimension THEN
                RAISE EXCEPTION 'query vector has % dimensions; the active model produces %',
                    vector_dims(query_embedding), m.dimension USING ERRCODE = 'data_exception';
            END IF;
            -- Literals, not parameters, for the dimension and model id: the planner must match the
            -- partial expression index of this model. The filter runs inside the index scan.
            RETURN QUERY EXECUTE format(
                $q$
                SELECT nn.photo_id, nn.score, nn.title, nn.photographer, nn.width, nn.height
                FROM (
                    SELECT e.photo_id, 1 - (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) AS score,
                           p.title, p.photographer, p.width, p.height
                    FROM photo_embeddings e
                    JOIN photos p ON p.id = e.photo_id
                    WHERE e.model_id = %2$s
                      AND p.status = 'indexed' AND p.visibility = 'public' AND p.moderation_status = 'approved'
                      AND (%3$s OR NOT p.depicts_minor OR p.parental_consent)
                    ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)
                    LIMIT $2
                ) nn
                ORDER BY nn.score DESC
                $q$, m.dimension, m.id, CASE WHEN minors_allowed THEN 'true' ELSE 'false' END)
            USING query_embedding, k;
        END $function$;
REVOKE ALL ON FUNCTION public.search_photos(query_embedding vector, k integer, region text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.search_photos(query_embedding vector, k integer, region text) TO withsense_reader;
