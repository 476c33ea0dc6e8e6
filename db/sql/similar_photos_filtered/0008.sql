-- Photos that look like a photo the viewer may see, with the filters and options of search_photos_filtered()
-- (the photo itself is never among them). None when the viewer may not see it: a photo the minors law hides
-- from `region` (photo_visibility() = 'restricted') cannot be the starting point of a search either.
CREATE OR REPLACE FUNCTION similar_photos_filtered(
    source_photo_id uuid,
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
AS $$
DECLARE
    source vector;
BEGIN
    IF photo_visibility(source_photo_id, region) <> 'visible' THEN
        RETURN;
    END IF;
    SELECT e.embedding::vector INTO source
    FROM photo_embeddings e JOIN embedding_models m ON m.id = e.model_id AND m.active
    WHERE e.photo_id = source_photo_id;
    IF source IS NULL THEN
        RETURN;
    END IF;
    IF options IS NOT NULL AND options ? 'mode' AND options->>'mode' <> 'semantic' THEN
        RAISE EXCEPTION 'similar photos are found by what they show: mode must be semantic'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT * FROM search_photos_filtered(
        source, NULL, k, region, filters,
        coalesce(options, '{}') || jsonb_build_object(
            'mode', 'semantic',
            'exclude', coalesce(options->'exclude', '[]') || to_jsonb(source_photo_id::text)));
END $$;
REVOKE ALL ON FUNCTION similar_photos_filtered(uuid, integer, text, jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION similar_photos_filtered(uuid, integer, text, jsonb, jsonb) TO withsense_reader;
