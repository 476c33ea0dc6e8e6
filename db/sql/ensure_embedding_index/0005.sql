-- Creates a model's partial HNSW index, sized from the model's dimension.
-- As revision 0005 left it: that revision carries this text inline (it predates db/sql/); the text
-- here is pg_get_functiondef() of a database migrated to it, so re-applying it changes nothing.
CREATE OR REPLACE FUNCTION public.ensure_embedding_index(p_model_id integer)
 RETURNS text
 LANGUAGE plpgsql
AS $function$
        DECLARE
            dim integer;
            index_name text := format('ix_photo_embeddings_hnsw_model_%s', p_model_id);
        BEGIN
            SELECT dimension INTO dim FROM embedding_models WHERE id = p_model_id;
            IF dim IS NULL THEN
                RAISE EXCEPTION 'unknown embedding model %', p_model_id;
            END IF;
            EXECUTE format(
                'CREATE INDEX IF NOT EXISTS %I ON photo_embeddings USING hnsw ((embedding::halfvec(%s)) halfvec_cosine_ops) '
                'WITH (m = 16, ef_construction = 128) WHERE model_id = %s',
                index_name, dim, p_model_id);
            RETURN index_name;
        END $function$;
REVOKE ALL ON FUNCTION public.ensure_embedding_index(p_model_id integer) FROM PUBLIC;
