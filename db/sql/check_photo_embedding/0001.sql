-- The trigger on photo_embeddings that refuses vectors no search could use.
-- As revision 0001 left it: that revision carries this text inline (it predates db/sql/); the text
-- here is pg_get_functiondef() of a database migrated to it, so re-applying it changes nothing.
CREATE OR REPLACE FUNCTION public.check_photo_embedding()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
        DECLARE
            expected integer;
            norm double precision;
        BEGIN
            IF NEW.embedding IS NULL THEN
                RAISE EXCEPTION 'embedding is NULL' USING ERRCODE = 'not_null_violation';
            END IF;
            SELECT dimension INTO expected FROM embedding_models WHERE id = NEW.model_id;
            IF expected IS NULL THEN
                RAISE EXCEPTION 'unknown embedding model %', NEW.model_id USING ERRCODE = 'foreign_key_violation';
            END IF;
            IF vector_dims(NEW.embedding) <> expected THEN
                RAISE EXCEPTION 'embedding has % dimensions but model % produces %',
                    vector_dims(NEW.embedding), NEW.model_id, expected
                    USING ERRCODE = 'data_exception';
            END IF;
            norm := l2_norm(NEW.embedding);
            IF norm IS NULL OR abs(norm - 1.0) > 0.01 THEN
                RAISE EXCEPTION 'embedding must be L2-normalised (its norm is %); zero vectors are refused', norm
                    USING ERRCODE = 'data_exception';
            END IF;
            RETURN NEW;
        END $function$;
