-- Nearest photos to a photo the viewer may see, best first.
-- As revision 0006 left it: that revision carries this text inline (it predates db/sql/); the text
-- here is pg_get_functiondef() of a database migrated to it, so re-applying it changes nothing.
CREATE OR REPLACE FUNCTION public.similar_photos(source_photo_id uuid, k integer DEFAULT 10, region text DEFAULT NULL::text)
 RETURNS TABLE(photo_id uuid, score double precision, title text, photographer text, width integer, height integer)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'public', 'pg_temp'
AS $function$
DECLARE
    source vector;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A photo the viewer may not see cannot be the starting point of a search either.
    IF photo_visibility(source_photo_id, region) <> 'visible' THEN
        RETURN;
    END IF;
    SELECT e.embedding::vector INTO source
    FROM photo_embeddings e JOIN embedding_models m ON m.id = e.model_id AND m.active
    WHERE e.photo_id = source_photo_id;
    IF source IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT s.* FROM search_photos(source, LEAST(k + 1, 1000), region) s
    WHERE s.photo_id <> source_photo_id
    ORDER BY s.score DESC
    LIMIT k;
END $function$;
REVOKE ALL ON FUNCTION public.similar_photos(source_photo_id uuid, k integer, region text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.similar_photos(source_photo_id uuid, k integer, region text) TO withsense_reader;
