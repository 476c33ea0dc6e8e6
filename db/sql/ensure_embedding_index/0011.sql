-- Creates a model's partial HNSW index of the kind its searches use (embedding_models.vector_index, migration
-- 0011: 'halfvec', today's, or 'binary'; build_embedding_index() makes either). Nothing when it is there.
CREATE OR REPLACE FUNCTION public.ensure_embedding_index(p_model_id integer)
 RETURNS text
 LANGUAGE plpgsql
 SET search_path = public, pg_temp
AS $function$
DECLARE
    kind text;
BEGIN
    SELECT vector_index INTO kind FROM embedding_models WHERE id = p_model_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown embedding model %', p_model_id;
    END IF;
    RETURN build_embedding_index(p_model_id, kind);
END $function$;
REVOKE ALL ON FUNCTION public.ensure_embedding_index(p_model_id integer) FROM PUBLIC;
