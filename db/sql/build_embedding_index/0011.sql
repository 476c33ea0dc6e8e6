-- Builds one kind of a model's partial HNSW index (migration 0011), whether or not it is the kind searches use:
--   'halfvec': hnsw ((embedding::halfvec(D)) halfvec_cosine_ops), ix_photo_embeddings_hnsw_model_<id> (before 0011,
--              the only one);
--   'binary':  hnsw ((binary_quantize(embedding::halfvec(D) - centre)::bit(D)) bit_hamming_ops),
--              ix_photo_embeddings_bq_model_<id>, 64 bytes a vector instead of 1,024 (SCALING.md section 2); the
--              centre is the mean of the model's vectors now, recorded on embedding_models.binary_centre in the
--              same transaction (no vectors yet: no centre).
-- m 16, ef_construction 128 for both. Nothing when the index is there. On a partitioned photo_embeddings the index
-- is made on the parent, so each partition gets its own. Searches go on meanwhile (CREATE INDEX blocks writes to
-- the vectors, not reads); set_embedding_index_kind() then switches them to it, drop_embedding_index() removes
-- the other (`withsense embeddings index --kind`). Returns the index's name.
CREATE OR REPLACE FUNCTION build_embedding_index(p_model_id integer, p_kind text) RETURNS text
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    m record;
    index_name text;
    centre halfvec;
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('halfvec', 'binary') THEN
        RAISE EXCEPTION 'the index kind must be halfvec or binary, got %', coalesce(p_kind, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT id, dimension INTO m FROM embedding_models WHERE id = p_model_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown embedding model %', p_model_id;
    END IF;
    IF p_kind = 'halfvec' THEN
        index_name := format('ix_photo_embeddings_hnsw_model_%s', p_model_id);
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON photo_embeddings USING hnsw ((embedding::halfvec(%s)) halfvec_cosine_ops) '
            'WITH (m = 16, ef_construction = 128) WHERE model_id = %s',
            index_name, m.dimension, p_model_id);
        RETURN index_name;
    END IF;
    index_name := format('ix_photo_embeddings_bq_model_%s', p_model_id);
    IF to_regclass(format('public.%I', index_name)) IS NOT NULL THEN
        RETURN index_name;  -- built on the centre recorded then
    END IF;
    EXECUTE format('SELECT avg(embedding::halfvec(%1$s)::vector(%1$s))::halfvec(%1$s) FROM photo_embeddings '
                   'WHERE model_id = %2$s', m.dimension, p_model_id)
        INTO centre;
    UPDATE embedding_models SET binary_centre = centre WHERE id = p_model_id;
    EXECUTE format(
        'CREATE INDEX %I ON photo_embeddings USING hnsw ((%s) bit_hamming_ops) '
        'WITH (m = 16, ef_construction = 128) WHERE model_id = %s',
        index_name, embedding_bits('embedding', m.dimension, centre), p_model_id);
    RETURN index_name;
END $$;
REVOKE ALL ON FUNCTION build_embedding_index(integer, text) FROM PUBLIC;
