-- Drops a model's index of `p_kind`, never the one its searches use (embedding_models.vector_index): switch
-- first (set_embedding_index_kind). Waits for the searches running on it. Returns whether there was one.
CREATE OR REPLACE FUNCTION drop_embedding_index(p_model_id integer, p_kind text) RETURNS boolean
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    used text;
    index_name text;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('halfvec', 'binary') THEN
        RAISE EXCEPTION 'the index kind must be halfvec or binary, got %', coalesce(p_kind, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT vector_index INTO used FROM embedding_models WHERE id = p_model_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown embedding model %', p_model_id;
    END IF;
    IF used = p_kind THEN
        RAISE EXCEPTION 'model %''s searches use its % index: switch them first', p_model_id, p_kind
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    index_name := format(CASE p_kind WHEN 'halfvec' THEN 'ix_photo_embeddings_hnsw_model_%s'
                         ELSE 'ix_photo_embeddings_bq_model_%s' END, p_model_id);
    IF to_regclass(format('public.%I', index_name)) IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP INDEX %I', index_name);
    IF p_kind = 'binary' THEN
        UPDATE embedding_models SET binary_centre = NULL WHERE id = p_model_id;
    END IF;
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION drop_embedding_index(integer, text) FROM PUBLIC;
