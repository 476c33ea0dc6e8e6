-- One filter's values as text: a JSON string or an array of strings (each trimmed; blanks refused).
-- Used by search_photos_filtered() to read its `filters` argument; raises invalid_parameter_value (22023)
-- with a message naming the filter for anything else.
CREATE OR REPLACE FUNCTION search_filter_values(filter_name text, filter_value jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    found text[];
BEGIN
    IF jsonb_typeof(filter_value) = 'string' THEN
        found := ARRAY[btrim(filter_value #>> '{}')];
    ELSIF jsonb_typeof(filter_value) = 'array' THEN
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(filter_value) item WHERE jsonb_typeof(item) <> 'string') THEN
            RAISE EXCEPTION 'filter "%" takes a string or an array of strings, got %', filter_name, filter_value
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT coalesce(array_agg(btrim(item)), '{}') INTO found FROM jsonb_array_elements_text(filter_value) item;
        IF cardinality(found) = 0 THEN
            RAISE EXCEPTION 'filter "%" needs at least one value', filter_name USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF cardinality(found) > 50 THEN
            RAISE EXCEPTION 'filter "%" takes at most 50 values, got %', filter_name, cardinality(found)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSE
        RAISE EXCEPTION 'filter "%" takes a string or an array of strings, got %', filter_name,
            coalesce(filter_value::text, 'null') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(found) item WHERE item = '' OR length(item) > 1000) THEN
        RAISE EXCEPTION 'filter "%" has an empty value or one longer than 1000 characters', filter_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN found;
END $$;
REVOKE ALL ON FUNCTION search_filter_values(text, jsonb) FROM PUBLIC;
