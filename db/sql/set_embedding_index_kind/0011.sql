-- Switches a model's searches to its index of `p_kind` (embedding_models.vector_index, read by search_photos and
-- search_photos_filtered on each call), once build_embedding_index() has made it: refused while it is missing,
-- so searches never lose their index. Returns the kind before.
CREATE OR REPLACE FUNCTION set_embedding_index_kind(p_model_id integer, p_kind text) RETURNS text
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    before text;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('halfvec', 'binary') THEN
        RAISE EXCEPTION 'the index kind must be halfvec or binary, got %', coalesce(p_kind, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT vector_index INTO before FROM embedding_models WHERE id = p_model_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown embedding model %', p_model_id;
    END IF;
    IF to_regclass(format('public.%I', format(CASE p_kind WHEN 'halfvec' THEN 'ix_photo_embeddings_hnsw_model_%s'
                                                          ELSE 'ix_photo_embeddings_bq_model_%s' END, p_model_id)))
       IS NULL THEN
        RAISE EXCEPTION 'model % has no % index yet: build_embedding_index(%, %L) first', p_model_id, p_kind,
            p_model_id, p_kind USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE embedding_models SET vector_index = p_kind WHERE id = p_model_id;
    RETURN before;
END $$;
REVOKE ALL ON FUNCTION set_embedding_index_kind(integer, text) FROM PUBLIC;
