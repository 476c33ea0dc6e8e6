-- photo_embeddings as `partitions` hash partitions of photo_id (1: one plain table, the layout before 0010),
-- on the way to Citus, whose distributed tables are hash-sharded on the same key (SCALING.md).
--
--   SELECT repartition_photo_embeddings(8);   -- `withsense embeddings partition` (WITHSENSE_EMBEDDING_PARTITIONS)
--
-- Each partition gets its own HNSW index per model (CREATE INDEX on the parent: ensure_embedding_index()), and
-- the search functions stay one query: the planner merges the partitions' ordered index scans (Merge Append)
-- with every filter inside each scan. What it does, in one transaction:
--   1. locks photos (SHARE: no photo changes meanwhile, so the visibility flags copied stay right) and
--      photo_embeddings (ACCESS EXCLUSIVE: searches wait; about one HNSW build per model of downtime);
--   2. copies the rows into a new table of the wanted layout, drops the old one and takes its name;
--   3. adds the primary key, the foreign keys, the flags' indexes (migration 0014), the two triggers (check_photo_embedding and
--      photo_embedding_visibility) and each model's HNSW indexes again: each kind it had (halfvec, binary:
--      build_embedding_index(), migration 0011; a bit index gets the centre of the vectors then).
-- Returns the number of partitions (unchanged when already so).
CREATE OR REPLACE FUNCTION repartition_photo_embeddings(partitions integer) RETURNS integer
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    current integer;
    indexes text[];
    built text;
    i integer;
BEGIN
    IF partitions IS NULL OR partitions < 1 OR partitions > 256 THEN
        RAISE EXCEPTION 'partitions must be from 1 to 256, got %', partitions USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT CASE WHEN c.relkind = 'p' THEN (SELECT count(*)::integer FROM pg_inherits WHERE inhparent = c.oid) ELSE 1 END
    INTO current FROM pg_class c WHERE c.oid = 'photo_embeddings'::regclass;
    IF current = partitions THEN
        RETURN current;
    END IF;
    LOCK TABLE photos IN SHARE MODE;
    LOCK TABLE photo_embeddings IN ACCESS EXCLUSIVE MODE;
    -- Each model's indexes as 'kind:model id' (ix_photo_embeddings_hnsw_model_<id>: halfvec, _bq_: binary).
    SELECT coalesce(array_agg(DISTINCT CASE WHEN indexname ~ '^ix_photo_embeddings_bq_' THEN 'binary' ELSE 'halfvec' END
                                       || ':' || substring(indexname FROM 'model_([0-9]+)$')), '{}') INTO indexes
    FROM pg_indexes WHERE tablename = 'photo_embeddings'
      AND (indexname ~ '^ix_photo_embeddings_hnsw_model_[0-9]+$' OR indexname ~ '^ix_photo_embeddings_bq_model_[0-9]+$');

    IF partitions = 1 THEN
        CREATE TABLE photo_embeddings_new (LIKE photo_embeddings INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
    ELSE
        CREATE TABLE photo_embeddings_new (LIKE photo_embeddings INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY HASH (photo_id);
        FOR i IN 0 .. partitions - 1 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF photo_embeddings_new FOR VALUES WITH (MODULUS %s, REMAINDER %s)',
                           format('photo_embeddings_new_p%s', i), partitions, i);
        END LOOP;
    END IF;
    INSERT INTO photo_embeddings_new SELECT * FROM photo_embeddings;
    DROP TABLE photo_embeddings;
    ALTER TABLE photo_embeddings_new RENAME TO photo_embeddings;
    FOR i IN 0 .. partitions - 1 LOOP
        IF partitions > 1 THEN
            EXECUTE format('ALTER TABLE %I RENAME TO %I', format('photo_embeddings_new_p%s', i),
                           format('photo_embeddings_p%s', i));
        END IF;
    END LOOP;
    ALTER TABLE photo_embeddings ADD CONSTRAINT pk_photo_embeddings PRIMARY KEY (photo_id, model_id);
    ALTER TABLE photo_embeddings ADD CONSTRAINT fk_photo_embeddings_photo_id_photos
        FOREIGN KEY (photo_id) REFERENCES photos (id) ON DELETE CASCADE;
    ALTER TABLE photo_embeddings ADD CONSTRAINT fk_photo_embeddings_model_id_embedding_models
        FOREIGN KEY (model_id) REFERENCES embedding_models (id) ON DELETE CASCADE;
    -- The visible rows of each flag, for the exact path of a search where few are visible (migration 0014).
    CREATE INDEX ix_photo_embeddings_visible_restricted ON photo_embeddings (model_id) WHERE visible_restricted;
    CREATE INDEX ix_photo_embeddings_visible_unrestricted ON photo_embeddings (model_id) WHERE visible_unrestricted;
    CREATE TRIGGER photo_embeddings_check BEFORE INSERT OR UPDATE OF embedding, model_id ON photo_embeddings
        FOR EACH ROW EXECUTE FUNCTION check_photo_embedding();
    CREATE TRIGGER photo_embedding_visibility BEFORE INSERT OR UPDATE ON photo_embeddings
        FOR EACH ROW EXECUTE FUNCTION photo_embedding_visibility();
    FOREACH built IN ARRAY indexes LOOP
        PERFORM build_embedding_index(split_part(built, ':', 2)::integer, split_part(built, ':', 1));
    END LOOP;
    ANALYZE photo_embeddings;
    RETURN partitions;
END $$;
REVOKE ALL ON FUNCTION repartition_photo_embeddings(integer) FROM PUBLIC;
